% from urllib.parse import quote
% import time
% rebase('base', title='Association log')
<nav class="sub"><a href="/logs/audit">Audit log</a><a href="/logs/associations" class="on">Association log</a><a href="/logs/hl7">HL7 log</a></nav>
<h1>Association log</h1>
<form method="get" class="search card"><label>Search <input name="q" value="{{search}}"></label> <button type="submit">Search</button> <a href="/logs/associations.csv?q={{quote(search)}}">Export CSV</a></form>
<div class="scroll"><table class="list" id="associations">
<thead><tr><th>#</th><th>Started</th><th>Calling</th><th>Called</th><th>Peer</th><th>TLS</th><th class="num">Stored</th><th class="num">Failed</th><th>Result</th><th>Detail</th></tr></thead>
<tbody>
% for r in rows:
<tr><td>{{r['id']}}</td><td>{{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['started_at']))}}</td><td>{{r['calling_aet']}}</td><td>{{r['called_aet']}}</td>
<td>{{r['peer_host']}}:{{r['peer_port']}}</td><td>{{'yes' if r['tls'] else ''}}</td><td class="num">{{r['stored']}}</td><td class="num">{{r['failed']}}</td><td>{{r['result']}}</td><td class="detail">{{r['detail']}}</td></tr>
% end
</tbody></table></div>
% include('pager')
