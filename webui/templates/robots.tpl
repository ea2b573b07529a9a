% rebase('base', title='Robots')
<h1>Robots</h1>
<p class="hint">Updates by itself every 3 seconds.</p>
<div class="robots">
% for r in robots:
<section class="card robot" data-robot="{{r['name']}}">
  <h2>{{r['name']}} <span class="badge {{'ok' if r['online'] else 'bad'}}" data-key="online">{{'online' if r['online'] else 'offline'}}</span></h2>
  <p class="muted">{{r['driver']}} · role {{r['role']}} · media {{', '.join(r['media'])}} · {{r['source']}}</p>
  <p class="message" data-key="message">{{r['message']}}</p>
  <h3>Stackers</h3>
  <dl class="facts" data-key="stackers">
  % for k, v in r['stackers'].items():
    <dt>{{k}}</dt><dd data-stacker="{{k}}">{{v}}</dd>
  % end
  </dl>
  <h3>Ink</h3>
  <div class="ink" data-key="ink">
  % for colour, pct in r['ink'].items():
    <label class="inkbar"><span>{{colour}}</span> <meter min="0" max="100" low="15" high="30" optimum="100" value="{{pct}}" data-ink="{{colour}}"></meter> <span class="pct" data-ink-text="{{colour}}">{{pct}}%</span></label>
  % end
  </div>
  <h3>Drives</h3>
  <ul class="drives" data-key="drives">
  % for d in r['drives']:
    <li>{{', '.join('%s: %s' % (k, v) for k, v in d.items())}}</li>
  % end
  % if not r['drives']:
    <li class="muted">none reported</li>
  % end
  </ul>
  <p>Current job: <span data-key="jobs">{{', '.join(r['jobs']) or 'none'}}</span></p>
  % if r['faults']:
  <p class="error" data-key="faults">{{'; '.join(r['faults'])}}</p>
  % end
  % if rank[role] >= rank['admin']:
  <a class="small button" href="/robots?edit={{r['name']}}#robot-form">Edit</a>
  <form method="post" action="/robots/{{r['name']}}/delete" class="inline-form" data-confirm="Delete robot {{r['name']}} from the configuration?"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit" class="small danger">Delete</button></form>
  % end
</section>
% end
% if not robots:
<p class="empty">No robot configured. Plug one in, or add it below.</p>
% end
</div>
% if rank[role] >= rank['admin']:
<h2>{{'Change robot ' + form['name'] if form.get('name') else 'Add a robot'}}</h2>
% if error:
<p class="error" role="alert">{{error}}</p>
% end
<form method="post" action="/robots" class="card grid" id="robot-form">
  <input type="hidden" name="csrf" value="{{csrf}}">
  <label>Name <input name="name" value="{{form.get('name', '')}}" required></label>
  <label>Driver <select name="driver">
  % for o in ('epson', 'primera', 'folder'):
    <option {{'selected' if form.get('driver') == o else ''}}>{{o}}</option>
  % end
  </select></label>
  <label>Role <select name="role"><option value="">(from the driver)</option>
  % for o in ('epson', 'primera', 'any'):
    <option {{'selected' if form.get('role') == o else ''}}>{{o}}</option>
  % end
  </select></label>
  <label>Media loaded <input name="media" value="{{form.get('media', 'CD,DVD')}}"></label>
  <label>Spool folder <input name="spool" value="{{form.get('spool', '')}}" required></label>
  <label>Engine path <input name="engine_path" value="{{form.get('engine_path', '')}}"></label>
  <label>Mode <select name="mode">
  % for o in ('image', 'data'):
    <option {{'selected' if form.get('mode') == o else ''}}>{{o}}</option>
  % end
  </select></label>
  <label>Verify <select name="verify"><option>true</option><option {{'selected' if form.get('verify') == 'false' else ''}}>false</option></select></label>
  <button type="submit">Save robot</button>
</form>
% end
