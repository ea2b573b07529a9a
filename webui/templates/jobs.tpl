% import time
% rebase('base', title='Jobs')
<h1>Job queue</h1>
<p class="hint">Updates by itself every 2 seconds. <span id="live-state" class="muted"></span></p>
<div class="scroll">
<table class="list stack" id="jobs" data-can-act="{{'1' if rank[role] >= rank['technician'] else ''}}">
<thead><tr><th>Job</th><th>Patient</th><th>State</th><th>Progress</th><th>Robot</th><th>Message</th><th>Discs</th><th></th></tr></thead>
<tbody>
% for j in jobs:
<tr data-job="{{j['id']}}">
  <td class="id"><a href="/jobs/{{j['id']}}">{{j['id']}}</a><br><span class="muted">{{time.strftime('%m-%d %H:%M', time.localtime(j['created_at']))}}</span></td>
  <td class="patient">{{j['patient_name']}}<br><span class="muted">{{j['patient_id']}}</span></td>
  <td data-label="State"><span class="state s-{{j['state']}}">{{j['state']}}</span></td>
  <td data-label="Progress"><progress max="1" value="{{j['progress']}}"></progress> <span class="pct">{{int(j['progress'] * 100)}}%</span></td>
  <td class="robot" data-label="Robot">{{j['robot'] or j['role']}}</td>
  <td class="message" data-label="Message">{{j['message']}}</td>
  <td class="num discs" data-label="Discs × copies">{{j['discs']}} × {{j['copies']}}</td>
  <td class="actions">
  % if rank[role] >= rank['technician']:
    % if j['can_cancel']:
    <form method="post" action="/jobs/{{j['id']}}/cancel" data-confirm="Cancel job {{j['id']}}?"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit" class="small">Cancel</button></form>
    % end
    % if j['can_retry']:
    <form method="post" action="/jobs/{{j['id']}}/retry"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit" class="small">Retry</button></form>
    % end
  % end
  </td>
</tr>
% end
</tbody>
</table>
</div>
<p id="no-jobs" class="empty{{' hidden' if jobs else ''}}">No jobs yet. Send a study to {{aet}}_E or {{aet}}_P, or burn one from its study page.</p>
% if groups:
<h2>Waiting for more images (delayed groups)</h2>
<ul class="groups">
% for g in groups:
  <li>{{g['role']}} · {{g['group_by']}} {{g['patient_id'] if g['group_by'] == 'patient' else g['study_uid']}} · {{g['instances']}} images · burns in <span class="countdown" data-deadline="{{int(g['deadline_at'])}}">{{max(0, int(g['deadline_at'] - now))}} s</span></li>
% end
</ul>
% end
% if held:
<h2>Associations held back</h2>
<ul class="held">
% for h in held:
  <li>Association {{h['assoc_id']}} to {{h['called_aet']}} ({{h['state']}}){{': ' + h['note'] if h['note'] else ''}}
  % if rank[role] >= rank['technician']:
    <form method="post" action="/associations/{{h['assoc_id']}}/burn" class="inline-form"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit" class="small">Burn anyway</button></form>
  % end
  </li>
% end
</ul>
% end
