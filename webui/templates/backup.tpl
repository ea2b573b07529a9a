% rebase('base', title='Configuration backup')
<h1>Configuration backup</h1>
<p class="hint">Settings, known nodes, robots and network settings; never patient data, device keys or patient links.</p>
<h2>Export</h2>
<form method="post" action="/backup/export" class="card inline" id="export-form">
  <input type="hidden" name="csrf" value="{{csrf}}">
  <button type="submit" id="export">Download the configuration</button>
</form>
<h2>Import</h2>
% if error:
<p class="error" role="alert" id="import-error">{{error}}</p>
% end
<form method="post" action="/backup/import" enctype="multipart/form-data" class="card inline" id="import-form" data-confirm="Replace this station's configuration with the file?">
  <input type="hidden" name="csrf" value="{{csrf}}">
  <label for="import-file">Configuration file (.json)</label>
  <input type="file" name="file" id="import-file" accept=".json,application/json">
  <button type="submit" class="danger" id="import">Import</button>
</form>
<p class="muted">The file is checked whole first: if anything in it is wrong, nothing changes and the reason is shown.</p>
