% import time
% rebase('base', title='Studies')
<h1>Studies</h1>
% if arrivals:
<section class="card">
<h2>New arrivals (last 6 hours)</h2>
<ul class="arrivals">
% for s in arrivals:
  <li><a href="/studies/{{s['study_uid']}}">{{s['patient_name'] or '(no name)'}}</a> · {{s['id_value']}} · {{s['description']}} · {{s['instances']}} images · received {{time.strftime('%H:%M', time.localtime(s['last_received']))}}</li>
% end
</ul>
</section>
% end
<form method="get" action="/studies" class="search card">
  <label>Patient name <input name="name" value="{{q['name']}}"></label>
  <label>Patient ID <input name="pid" value="{{q['pid']}}"></label>
  <label>From <input type="date" name="from" value="{{q['from']}}"></label>
  <label>To <input type="date" name="to" value="{{q['to']}}"></label>
  <label>Modality <input name="modality" value="{{q['modality']}}" size="4"></label>
  <label>Accession <input name="accession" value="{{q['accession']}}"></label>
  <button type="submit">Search</button> <a href="/studies">Clear</a>
</form>
<div class="scroll">
<table class="list stack" id="studies">
<thead><tr><th>Patient</th><th>ID</th><th>Birth</th><th>Study date</th><th>Modality</th><th>Accession</th><th>Description</th><th class="num">Images</th></tr></thead>
<tbody>
% for s in rows:
<tr>
  <td><a href="/studies/{{s['study_uid']}}" class="patient">{{s['patient_name'] or '(no name)'}}</a></td>
  <td data-label="ID">{{s['id_value']}}</td><td data-label="Birth">{{fdate(s['birth_date'])}}</td><td data-label="Study date">{{fdate(s['study_date'])}}</td>
  <td data-label="Modality">{{s['modalities'] or ''}}</td><td data-label="Accession">{{s['accession']}}</td><td data-label="Description">{{s['description']}}</td><td class="num" data-label="Images">{{s['instances']}}</td>
</tr>
% end
% if not rows:
<tr><td colspan="8" class="empty">No study matches.</td></tr>
% end
</tbody>
</table>
</div>
% include('pager')
