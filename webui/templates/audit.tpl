% from urllib.parse import quote
% import time
% rebase('base', title='Audit log')
<nav class="sub"><a href="/logs/audit" class="on">Audit log</a><a href="/logs/associations">Association log</a><a href="/logs/hl7">HL7 log</a></nav>
<h1>Audit log</h1>
<form method="get" class="search card"><label>Search <input name="q" value="{{search}}"></label> <button type="submit">Search</button> <a href="/logs/audit.csv?q={{quote(search)}}">Export CSV</a></form>
<div class="scroll"><table class="list" id="audit">
<thead><tr><th>When</th><th>Who</th><th>What</th><th>On</th><th>Detail</th><th>From</th></tr></thead>
<tbody>
% for r in rows:
<tr><td>{{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['at']))}}</td><td>{{r['actor']}}</td><td>{{r['action']}}</td><td>{{r['target']}}</td><td class="detail">{{r['detail']}}</td><td>{{r['address']}}</td></tr>
% end
</tbody></table></div>
% include('pager')
<h2>Log files</h2>
<ul id="log-files">
% for f in files:
  <li><a href="/logs/files/{{f['name']}}">{{f['name']}}</a> <span class="muted">{{fsize(f['size'])}}, {{time.strftime('%Y-%m-%d %H:%M', time.localtime(f['mtime']))}}</span></li>
% end
% if not files:
  <li class="muted">None yet (the DICOM debug log appears here when dicom.debug is on).</li>
% end
</ul>
