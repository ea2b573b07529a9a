% rebase('base', title='Query')
<h1>Query a DICOM node</h1>
<form method="get" action="/query" class="card search" id="query-form">
  <label>Node
    <select name="node" required>
    % for n in nodes:
      <option value="{{n.aet}}" {{'selected' if n.aet == q['node'] else ''}}>{{n.aet}}{{' – ' + n.description if n.description else ''}}</option>
    % end
    </select></label>
  <label>Level
    <select name="level">
    % for lv in levels:
      <option value="{{lv}}" {{'selected' if lv == q['level'] else ''}}>{{lv}}</option>
    % end
    </select></label>
  <label>Patient name <input name="name" value="{{q['name']}}" placeholder="DOE^J*"></label>
  <label>Patient ID <input name="pid" value="{{q['pid']}}"></label>
  <label>From <input type="date" name="from" value="{{q['from']}}"></label>
  <label>To <input type="date" name="to" value="{{q['to']}}"></label>
  <label>Modality <input name="modality" value="{{q['modality']}}" size="4" placeholder="CT"></label>
  <label>Accession <input name="accession" value="{{q['accession']}}"></label>
  <label>Study UID <input name="study" value="{{q['study']}}" placeholder="needed at series level"></label>
  <button type="submit" id="query">Query</button>
</form>
% if not nodes:
<p class="empty">No known node takes C-FIND: add one on the <a href="/nodes">Known nodes</a> page.</p>
% end
<p class="hint">Wildcards * and ? work in names and IDs. The query goes through the transfer process, within <code>dicom.max_connections</code>.</p>
% if error:
<p class="error" role="alert" id="query-error">{{error}}</p>
% end
% if results is not None:
<h2 id="result-count">{{len(results)}} result(s) from {{q['node']}}</h2>
<div class="scroll">
<table class="list" id="results">
<thead><tr><th>Patient</th><th>Date</th><th>Description</th><th>Modality</th><th>Accession</th><th class="num">Images</th><th></th></tr></thead>
<tbody>
% for r in results:
<tr>
  <td>{{r.get('PatientName', '')}}<br><span class="muted">{{r.get('PatientID', '')}}</span></td>
  <td>{{fdate(r.get('StudyDate', ''))}}</td>
  <td>{{r.get('StudyDescription', '') or r.get('SeriesDescription', '')}}</td>
  <td>{{r.get('ModalitiesInStudy', '') or r.get('Modality', '')}}</td>
  <td>{{r.get('AccessionNumber', '')}}</td>
  <td class="num">{{r.get('NumberOfStudyRelatedInstances', '') or r.get('NumberOfSeriesRelatedInstances', '') or r.get('NumberOfPatientRelatedStudies', '')}}</td>
  <td class="actions">
  % if r.get('StudyInstanceUID'):
    % for burn, label in (("0", "Retrieve"), ("1", "Retrieve and burn")):
    <form method="post" action="/query/retrieve"><input type="hidden" name="csrf" value="{{csrf}}">
      <input type="hidden" name="node" value="{{q['node']}}"><input type="hidden" name="study" value="{{r['StudyInstanceUID']}}">
      <input type="hidden" name="series" value="{{r.get('SeriesInstanceUID', '')}}"><input type="hidden" name="burn" value="{{burn}}">
      <button type="submit" class="small">{{label}}</button></form>
    % end
  % elif q['level'] == 'patient':
    <a class="small button" href="/query?{{'node=' + q['node'] + '&level=study&pid=' + r.get('PatientID', '')}}">Studies</a>
  % end
  </td>
</tr>
% end
% if not results:
<tr><td colspan="7" class="empty">Nothing matches.</td></tr>
% end
</tbody>
</table>
</div>
% end
