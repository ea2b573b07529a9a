% rebase('base', title='Study')
<h1 class="patient">{{study['patient_name'] or '(no name)'}}</h1>
<dl class="facts card">
  <dt>Patient ID</dt><dd>{{study['id_value']}}</dd>
  <dt>Birth date / sex</dt><dd>{{fdate(study['birth_date'])}} {{study['sex']}}</dd>
  <dt>Study date</dt><dd>{{fdate(study['study_date'])}} {{study['study_time'][:2]}}:{{study['study_time'][2:4]}}</dd>
  <dt>Accession</dt><dd>{{study['accession']}}</dd>
  <dt>Description</dt><dd>{{study['description']}}</dd>
  <dt>Referring</dt><dd>{{study['referring']}}</dd>
  <dt>Study UID</dt><dd class="uid">{{study['study_uid']}}</dd>
</dl>
<h2>Series</h2>
<div class="previews">
% for se in study['series']:
<figure class="preview"><img src="/studies/{{study['study_uid']}}/series/{{se['series_uid']}}/preview" alt="series {{se['series_number']}}" loading="lazy"><figcaption>{{se['series_number']}} {{se['modality']}} {{se['description']}}</figcaption></figure>
% end
</div>
<div class="scroll">
<table class="list">
<thead><tr><th>#</th><th>Modality</th><th>Description</th><th>Body part</th><th class="num">Images</th><th class="num">Size</th></tr></thead>
<tbody>
% for se in study['series']:
<tr><td>{{se['series_number']}}</td><td>{{se['modality']}}</td><td>{{se['description']}}</td><td>{{se['body_part']}}</td>
<td class="num">{{se['instances']}}</td><td class="num">{{fsize(se['size'])}}</td></tr>
% end
</tbody>
</table>
</div>
% if rank[role] >= rank['technician']:
<h2>Burn</h2>
<form method="post" action="/studies/{{study['study_uid']}}/burn" class="card inline" id="burn-form">
  <input type="hidden" name="csrf" value="{{csrf}}">
  <label>Robot role
    <select name="role" id="burn-role">
      <option value="any">any robot</option>
      <option value="epson">Epson (_E)</option>
      <option value="primera">Primera (_P)</option>
    </select></label>
  <label>Copies <input type="number" name="copies" min="1" max="100" value="{{copies}}"></label>
  <label>Priority <input type="number" name="priority" min="-10" max="10" value="0"></label>
  <button type="submit" id="burn">Burn this study</button>
</form>
% end
% if rank[role] >= rank['technician']:
<h2>Send</h2>
<form method="post" action="/studies/{{study['study_uid']}}/send" class="card inline" id="send-form">
  <input type="hidden" name="csrf" value="{{csrf}}">
  <label>Node
    <select name="node">
    % for n in store_nodes:
      <option value="{{n.aet}}">{{n.aet}}{{' – ' + n.description if n.description else ''}}</option>
    % end
    </select></label>
  <button type="submit" id="send" {{'' if store_nodes else 'disabled'}}>Send to node</button>
  % if not store_nodes:
  <span class="muted">No known node takes C-STORE.</span>
  % end
</form>
% end
% if rank[role] >= rank['technician']:
<h2>Patient link</h2>
<form method="post" action="/studies/{{study['study_uid']}}/token" class="card inline" id="token-form">
  <input type="hidden" name="csrf" value="{{csrf}}">
  <label>Days <input type="number" name="days" min="1" max="3650" value="{{token_days}}"></label>
  <span class="muted">from the study date (or from today, when later)</span>
  <button type="submit" id="make-token">Make a patient link</button>
</form>
% end
% if rank[role] >= rank['admin']:
<h2>Delete</h2>
<form method="post" action="/studies/{{study['study_uid']}}/delete" class="card inline" data-confirm="Delete this study and its files from the station? This cannot be undone.">
  <input type="hidden" name="csrf" value="{{csrf}}">
  <span class="muted">Removes the study's {{sum(se['instances'] for se in study['series'])}} files and its index entries. Refused while a job or a delayed group still burns it.</span>
  <button type="submit" class="danger" id="delete">Delete study</button>
</form>
% end
