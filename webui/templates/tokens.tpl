% import time
% rebase('base', title='Patient links')
<h1>Patient links</h1>
<p class="hint">Links to one study each (made on a study's page, or on every disc when <code>http.token_on_disc</code> is on). The link itself is shown once, when it is made; revoking one takes effect at once.</p>
<div class="scroll">
<table class="list" id="tokens">
<thead><tr><th>#</th><th>Patient</th><th>Study</th><th>State</th><th>Made</th><th>Works until</th><th class="num">Uses</th><th>Last use</th><th></th></tr></thead>
<tbody>
% for t in tokens:
<tr data-token="{{t['id']}}">
  <td>{{t['id']}}</td>
  <td>{{t['patient_name']}}<br><span class="muted">{{t['patient_id']}}</span></td>
  <td><a href="/studies/{{t['study_uid']}}">{{fdate(t['study_date'])}}</a> {{t['study_description']}}</td>
  <td><span class="state s-{{t['state']}}">{{t['state']}}</span></td>
  <td>{{time.strftime('%Y-%m-%d %H:%M', time.localtime(t['created_at']))}}<br><span class="muted">{{t['origin']}}</span></td>
  <td>{{time.strftime('%Y-%m-%d', time.localtime(t['expires_at']))}}</td>
  <td class="num">{{t['uses']}}</td>
  <td>{{time.strftime('%Y-%m-%d %H:%M', time.localtime(t['last_used'])) if t['last_used'] else '–'}}</td>
  <td class="actions">
  % if t['state'] == 'valid':
    <form method="post" action="/tokens/{{t['id']}}/revoke" data-confirm="Revoke link {{t['id']}}? It will open nothing any more."><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit" class="small danger">Revoke</button></form>
  % end
  </td>
</tr>
% end
</tbody>
</table>
</div>
