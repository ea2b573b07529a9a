% rebase('base', title='Forwarding')
<h1>Forwarding rules</h1>
<p class="hint">What the station receives is passed on to a known node once its study has been quiet for the rule's delay.</p>
<div class="scroll">
<table class="list" id="rules">
<thead><tr><th>Rule</th><th>What</th><th class="num">Backlog</th><th class="num">Sent</th><th>Last transfer</th><th></th></tr></thead>
<tbody>
% for r in rules:
<tr data-rule="{{r['rule'].name}}">
  <td>{{r['rule'].name}}</td><td>{{r['rule'].describe()}}</td>
  <td class="num">{{r['backlog']}} <span class="muted">({{r['waiting']}} waiting for the delay)</span></td>
  <td class="num">{{r['sent']}}</td>
  <td>{{(r['last']['state'] + ': ' + (r['last']['error'] or r['last']['message'] or '')) if r['last'] else 'none yet'}}</td>
  <td class="actions">
  % if rank[role] >= rank['admin']:
    <form method="post" action="/forwarding/{{r['rule'].name}}/delete" data-confirm="Delete rule {{r['rule'].name}}?"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit" class="small danger">Delete</button></form>
  % end
  </td>
</tr>
% end
% if not rules:
<tr><td colspan="6" class="empty">No forwarding rule.</td></tr>
% end
</tbody>
</table>
</div>
% if rank[role] >= rank['admin']:
<h2>Add a rule</h2>
% if error:
<p class="error" role="alert" id="rule-error">{{error}}</p>
% end
<form method="post" action="/forwarding" class="card" id="rule-form">
  <input type="hidden" name="csrf" value="{{csrf}}">
  <label>To node
    <select name="node">
    % for n in nodes:
      <option value="{{n.aet}}" {{'selected' if n.aet == form.getunicode('node', '') else ''}}>{{n.aet}}</option>
    % end
    </select></label>
  <label>Name <input name="name" value="{{form.getunicode('name', '')}}" placeholder="the node's AE title"></label>
  <label>Received on <input name="called" value="{{form.getunicode('called', '')}}" placeholder="any AE title"></label>
  <label>From <input name="calling" value="{{form.getunicode('calling', '')}}" placeholder="any sender"></label>
  <label>Modalities <input name="modalities" value="{{form.getunicode('modalities', '')}}" placeholder="CT,MR (any)"></label>
  <label>Delay (s) <input name="delay" value="{{form.getunicode('delay', '') or default_delay}}"></label>
  <button type="submit" id="add-rule">Add rule</button>
</form>
% end
