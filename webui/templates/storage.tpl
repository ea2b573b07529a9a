% rebase('base', title='Storage')
<h1>Storage and retention</h1>
% mb = 1000 * 1000
<dl class="facts card" id="usage">
  <dt>Data disk</dt><dd id="used">{{'%.1f' % report['used_percent']}}% used, {{fsize(report['free_bytes'])}} free of {{fsize(report['total_bytes'])}}</dd>
  <dt>Purging by disk space</dt><dd>starts below {{fsize(report['purge_below_free_bytes'])}} free, stops at {{fsize(report['purge_until_free_bytes'])}} free</dd>
  <dt>Studies</dt><dd id="study-counts">{{', '.join('%d %s' % (n, k) for k, n in sorted(report['studies'].items())) or 'none'}}</dd>
</dl>
% if error:
<p class="error" role="alert" id="storage-error">{{error}}</p>
% end
<h2>A purge now would delete</h2>
<div class="scroll">
<table class="list" id="would-delete">
<thead><tr><th>Patient</th><th>Study date</th><th class="num">Size</th><th>Why</th></tr></thead>
<tbody>
% for v in report['delete']:
<tr><td>{{v['patient_name']}}<br><span class="muted">{{v['patient_id']}}</span></td><td>{{fdate(v['study_date'])}}</td><td class="num">{{fsize(v['size'])}}</td><td>{{v['reason']}}</td></tr>
% end
% if not report['delete']:
<tr><td colspan="4" class="empty">Nothing.</td></tr>
% end
</tbody>
</table>
</div>
<h2>Next by age</h2>
<div class="scroll">
<table class="list" id="next">
<thead><tr><th>When</th><th>Patient</th><th>Study date</th><th>Kind</th><th class="num">Size</th></tr></thead>
<tbody>
% for v in report['next']:
<tr><td>{{ftime(v['due_at'])}}</td><td>{{v['patient_name']}}<br><span class="muted">{{v['patient_id']}}</span></td><td>{{fdate(v['study_date'])}}</td><td>{{v['kind']}}</td><td class="num">{{fsize(v['size'])}}</td></tr>
% end
% if not report['next']:
<tr><td colspan="5" class="empty">Nothing is due by age (see the settings below).</td></tr>
% end
</tbody>
</table>
</div>
% if report['protected']:
<h2>Kept (never deleted automatically)</h2>
<ul id="protected">
% for v in report['protected']:
  <li>{{v['patient_name']}} ({{v['patient_id']}}), {{fdate(v['study_date'])}}: {{v['protected']}}</li>
% end
</ul>
% end
% if rank[role] >= rank['admin']:
<h2>Purge now</h2>
<form method="get" action="/storage" class="card inline" id="preview-form">
  <input type="hidden" name="preview" value="1">
  <label>Older than (days) <input name="older_than_days" value="{{days}}" size="5" placeholder="settings"></label>
  <button type="submit" id="preview">Preview (dry run)</button>
</form>
% if preview is not None:
<h3 id="preview-title">Preview: {{len(preview)}} stud{{'y' if len(preview) == 1 else 'ies'}} would be deleted</h3>
<ul id="preview-list">
% for v in preview:
  <li>{{v.patient_name}} ({{v.patient_id}}), {{fdate(v.study_date)}}, {{fsize(v.size)}}: {{v.reason}}</li>
% end
</ul>
<form method="post" action="/storage/purge" class="card inline" data-confirm="Delete these studies and their files now? This cannot be undone.">
  <input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="older_than_days" value="{{days}}">
  <button type="submit" class="danger" id="purge">Purge now</button>
</form>
% end
<h2>Retention settings</h2>
<form method="post" action="/storage" class="card" id="retention-form">
  <input type="hidden" name="csrf" value="{{csrf}}">
  % for f in fields:
  <label>{{f['help']}} <input name="{{f['key']}}" value="{{f['value']}}" size="8"> <code class="muted">{{f['key']}}</code></label>
  % end
  <button type="submit" id="save-retention">Save</button>
</form>
% end
