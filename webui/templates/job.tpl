% import time
% rebase('base', title='Job ' + job['id'])
<h1>Job {{job['id']}} <span class="state s-{{job['state']}}">{{job['state']}}</span></h1>
<dl class="facts card">
  <dt>Patient</dt><dd class="patient">{{job['patient_name']}} <span class="muted">{{job['patient_id']}}</span></dd>
  <dt>Progress</dt><dd><progress max="1" value="{{job['progress']}}"></progress> {{int(job['progress'] * 100)}}%</dd>
  <dt>Robot</dt><dd>{{job['robot'] or '(not assigned yet)'}} · role {{job['role']}}</dd>
  <dt>Message</dt><dd>{{job['message']}}</dd>
  <dt>Copies · priority</dt><dd>{{raw['copies']}} · {{raw['priority']}}{{' · verify' if raw['verify'] else ''}}</dd>
  <dt>Source</dt><dd>{{raw['source']}}{{' (association %s)' % raw['assoc_id'] if raw['assoc_id'] else ''}}{{' (delayed group %s)' % group['id'] if group else ''}}</dd>
  <dt>Created</dt><dd>{{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(raw['created_at']))}}{{' · finished ' + time.strftime('%H:%M:%S', time.localtime(raw['finished_at'])) if raw['finished_at'] else ''}}</dd>
  <dt>Attempts</dt><dd>{{raw['attempts']}}</dd>
</dl>
% if rank[role] >= rank['technician']:
<p>
% if job['can_cancel']:
<form method="post" action="/jobs/{{job['id']}}/cancel" class="inline-form" data-confirm="Cancel job {{job['id']}}?"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit">Cancel</button></form>
% end
% if job['can_retry']:
<form method="post" action="/jobs/{{job['id']}}/retry" class="inline-form"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit">Retry</button></form>
% end
</p>
% end
<h2>Discs</h2>
% if raw['discs']:
<div class="discs">
% for n, d in enumerate(raw['discs'], 1):
<section class="card disc">
  <h3>Disc {{d.get('disc_number', n)}} of {{d.get('disc_count', len(raw['discs']))}}</h3>
  <p>{{d.get('media', '')}} · {{d.get('filesystem', '')}} · volume {{d.get('volume_label', '')}} · {{fsize(d.get('size', 0))}}</p>
  % if d.get('label_image'):
  <img src="/jobs/{{job['id']}}/label/{{n}}" alt="label preview of disc {{n}}" class="label" loading="lazy">
  % end
</section>
% end
</div>
% else:
<p class="muted">Not built yet.</p>
% end
<h2>Contents</h2>
<div class="scroll">
<table class="list stack">
<thead><tr><th>Study</th><th>Series</th><th class="num">Images</th><th class="num">Size</th></tr></thead>
<tbody>
% for c in contents:
% st = studies.get(c['study_uid']) or {}
% se = series.get(c['series_uid']) or {}
<tr><td><a href="/studies/{{c['study_uid']}}">{{fdate(st.get('study_date', ''))}} {{st.get('description', '') or c['study_uid']}}</a></td>
<td data-label="Series">{{se.get('series_number', '')}} {{se.get('modality', '')}} {{se.get('description', '')}}</td>
<td class="num" data-label="Images">{{c['instances']}}</td><td class="num" data-label="Size">{{fsize(c['size'])}}</td></tr>
% end
% if not contents:
<tr><td colspan="4" class="empty">No instance of this job is in the index any more.</td></tr>
% end
</tbody>
</table>
</div>
