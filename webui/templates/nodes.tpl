% rebase('base', title='Known nodes')
<h1>Known DICOM nodes</h1>
% if echo:
<p class="{{'ok' if echo['ok'] else 'error'}}" id="echo-result" role="status">Echo {{echo['aet']}} at {{echo['at']}} ({{echo['ms']}} ms): {{'success' if echo['ok'] else 'failure'}} – {{echo['message']}}</p>
% end
<div class="scroll">
<table class="list" id="nodes">
<thead><tr><th>AE title</th><th>Host</th><th>Port</th><th>TLS</th><th>Services</th><th>Description</th><th></th></tr></thead>
<tbody>
% for n in nodes:
<tr data-node="{{n.aet}}">
  <td>{{n.aet}}</td><td>{{n.host}}</td><td>{{n.port}}</td><td>{{'yes' if n.tls else ''}}</td>
  <td>{{', '.join(n.services)}}</td><td>{{n.description}}</td>
  <td class="actions">
  % if rank[role] >= rank['technician']:
    <form method="post" action="/nodes/{{n.aet}}/echo"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit" class="small">Echo</button></form>
    <a class="small button" href="/nodes?edit={{n.aet}}">Edit</a>
    <form method="post" action="/nodes/{{n.aet}}/delete" data-confirm="Delete node {{n.aet}}?"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit" class="small danger">Delete</button></form>
  % end
  </td>
</tr>
% end
% if not nodes:
<tr><td colspan="7" class="empty">No known node yet.</td></tr>
% end
</tbody>
</table>
</div>
% if rank[role] >= rank['technician']:
<h2>{{'Edit ' + edit.aet if edit else 'Add a node'}}</h2>
% if error:
<p class="error" role="alert">{{error}}</p>
% end
% cur = edit.to_doc() if edit else {'aet': form.getunicode('aet', ''), 'host': form.getunicode('host', ''), 'port': form.getunicode('port', ''), 'tls': form.get('tls') == 'true', 'services': form.getall('services') or list(services), 'description': form.getunicode('description', '')}
<form method="post" action="/nodes" class="card grid" id="node-form">
  <input type="hidden" name="csrf" value="{{csrf}}">
  <input type="hidden" name="original" value="{{edit.aet if edit else ''}}">
  <label>AE title <input name="aet" value="{{cur['aet']}}" required maxlength="16"></label>
  <label>Host <input name="host" value="{{cur['host']}}" required></label>
  <label>Port <input name="port" value="{{cur['port']}}" required inputmode="numeric"></label>
  <label>TLS <select name="tls"><option value="false">no</option><option value="true" {{'selected' if cur['tls'] else ''}}>yes</option></select></label>
  <fieldset><legend>Services</legend>
  % for s in services:
    <label class="check"><input type="checkbox" name="services" value="{{s}}" {{'checked' if s in cur['services'] else ''}}> {{s}}</label>
  % end
  </fieldset>
  <label>Description <input name="description" value="{{cur['description']}}"></label>
  <button type="submit">Save node</button>
</form>
% end
