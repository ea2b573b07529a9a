% import datetime
% when = lambda ts: datetime.datetime.fromtimestamp(ts).strftime('%Y-%m-%d %H:%M:%S') if ts else '-'
% rebase('base', title='Diagnostics')
<h1>Diagnostics</h1>
% sup = report['supervisor']
<p class="card">Supervisor: <strong>{{'running' if sup['running'] else 'NOT running'}}</strong>
{{'(pid %s)' % sup['pid'] if sup['running'] else '(last state: %s)' % sup['state']}}
{{' with the simulator' if sup['simulate'] else ''}} · data folder <code>{{report['data_dir']}}</code> · AE title {{report['aet']}}</p>
<h2>Ports</h2>
<div class="scroll"><table class="list" id="ports">
<thead><tr><th>Service</th><th>Port</th><th>State</th><th>Listening on (process)</th></tr></thead>
<tbody>
% for p in report['ports']:
<tr><td>{{p['name']}}</td><td>{{p['port'] or '-'}}</td><td>{{p['state']}}</td>
<td>{{', '.join('%s (%s, pid %s)' % (l['address'], l['process'] or '?', l['pid'] or '?') for l in p['listeners'])}}</td></tr>
% end
</tbody></table></div>
<h2>Processes</h2>
<div class="scroll"><table class="list" id="processes">
<thead><tr><th>Name</th><th>State</th><th>PID</th><th>Starts</th><th>Since</th><th>Last exit / note</th></tr></thead>
<tbody>
% for p in report['processes']:
<tr><td>{{p['name']}}</td><td><span class="state s-{{p['state']}}">{{p['state']}}</span></td><td>{{p.get('pid') or '-'}}</td><td>{{p['starts']}}</td>
<td>{{when(p.get('since'))}}</td><td>{{p.get('last_exit') or ''}} {{'' if (p.get('message') or '').startswith('pid ') else p.get('message') or ''}}
% if p['state'] == 'failed' and rank[role] >= rank['admin']:
<form method="post" action="/diagnostics/reset/{{p['name']}}" class="inline-form"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit" class="small" data-reset="{{p['name']}}">Reset</button></form>
% end
</td></tr>
% end
% if not report['processes']:
<tr><td colspan="6" class="empty">None: the supervisor is not running.</td></tr>
% end
</tbody></table></div>
<h2>Robots</h2>
<ul>
% for r in report['robots']:
<li>{{r['name']}} ({{r['driver'] or '?'}}, role {{r['role'] or '?'}}, {{r['source']}}): {{'online' if r['online'] else 'OFFLINE'}}; driver process {{r['process']}}; {{r['message']}}</li>
% end
% if not report['robots']:
<li>None configured.</li>
% end
</ul>
<h2>Queue and transfers</h2>
% q = report['queue']
<p>Queue: {{', '.join('%s %s' % kv for kv in sorted(q.items())) if q else 'empty'}}</p>
% for item in report.get('waiting', []):
<p class="muted">{{item['jobs']}} {{item['state']}}: {{item['message'] or '(no message)'}}</p>
% end
% for line in transfer_lines:
<p class="status-line">{{line.strip()}}</p>
% end
<h2>Disk, retention, database, certificate</h2>
<ul class="status-lines" id="state-lines">
% for line in state_lines:
<li>{{line.strip()}}</li>
% end
</ul>
