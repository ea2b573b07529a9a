% import time
% rebase('base', title='Transfers')
<h1>Transfers</h1>
<p class="hint">Retrieves and sends, handled by the transfer process. Updates by itself every 2 seconds. <span id="live-state" class="muted"></span></p>
<p id="transfer-counts"><span class="badge">{{counts.get('running', 0)}} running</span> <span class="badge">{{counts.get('queued', 0)}} queued</span></p>
<div class="scroll">
<table class="list stack" id="transfers">
<thead><tr><th>Transfer</th><th>Kind</th><th>Node</th><th>State</th><th>Done / warn / failed / left</th><th>Message</th><th></th></tr></thead>
<tbody>
% for t in transfers:
<tr data-transfer="{{t['id']}}">
  <td class="id">{{t['id']}}<br><span class="muted">{{time.strftime('%m-%d %H:%M', time.localtime(t['created_at']))}}</span></td>
  <td data-label="Kind">{{t['kind']}}{{' [' + t['rule'] + ']' if t['rule'] else ''}}<br><span class="muted uid">{{t['what']}}</span></td>
  <td data-label="Node">{{t['node']}}</td>
  <td data-label="State"><span class="state s-{{t['state']}}">{{t['state']}}</span></td>
  <td class="num" data-label="Counts">{{t['completed']}} / {{t['warning']}} / {{t['failed']}} / {{t['remaining']}}</td>
  <td class="message" data-label="Message">{{t['message']}}{{' (burn job ' + t['burn_job'] + ')' if t['burn_job'] else ''}}</td>
  <td class="actions">
  % if t['can_cancel']:
    <form method="post" action="/transfers/{{t['id']}}/cancel" data-confirm="Cancel transfer {{t['id']}}?"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit" class="small">Cancel</button></form>
  % end
  % if t['can_retry']:
    <form method="post" action="/transfers/{{t['id']}}/retry"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit" class="small">Retry</button></form>
  % end
  </td>
</tr>
% end
</tbody>
</table>
</div>
<p id="no-transfers" class="empty{{' hidden' if transfers else ''}}">No transfers yet. Query a node, or send a study from its page.</p>
