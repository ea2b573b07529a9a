% rebase('base', title='HL7 log')
<nav class="sub"><a href="/logs/audit">Audit log</a><a href="/logs/associations">Association log</a><a href="/logs/hl7" class="on">HL7 log</a></nav>
<h1>HL7 log</h1>
<p class="hint">What the HL7 process did, newest first (read-only).
% if logging_on:
Messages are logged in full (<code>hl7.log_messages</code> is on).
% else:
Message contents are not logged: turn <code>hl7.log_messages</code> on (<a href="/settings/worklist">Worklist settings</a>) while you debug an interface.
% end
</p>
<form method="get" class="search card"><label>Search <input name="q" value="{{search}}"></label> <button type="submit">Search</button></form>
<div class="scroll"><table class="list" id="hl7-log">
<thead><tr><th>When</th><th>Level</th><th>What</th></tr></thead>
<tbody>
% for r in rows:
<tr><td>{{r['time']}}</td><td>{{r['level']}}</td><td class="detail">{{r['text']}}
% if r['more']:
<pre class="hl7">{{r['more']}}</pre>
% end
</td></tr>
% end
% if not rows:
<tr><td colspan="3" class="empty">{{'Nothing matches.' if search else 'Nothing logged yet.'}}</td></tr>
% end
</tbody></table></div>
% include('pager')
