% rebase('base', title=title)
<nav class="sub">
% for g, t in groups:
  <a href="/settings/{{g}}" class="{{'on' if g == group else ''}}">{{t}}</a>
% end
</nav>
<h1>{{title}}</h1>
% if error:
<p class="error" role="alert" id="error">{{error}}</p>
% end
% if group == 'http':
<p class="hint">With SSL on, HTTPS uses the device certificate made by <code>burnstation init</code>. Tell browsers to trust the device CA: <a href="/tls/ca.pem">download burnstation-ca.pem</a>.</p>
% end
% if addresses:
<p class="hint">This box's IP addresses: <strong>{{', '.join(addresses)}}</strong></p>
% end
<form method="post" action="/settings/{{group}}" class="card settings">
  <input type="hidden" name="csrf" value="{{csrf}}">
  % for f in fields:
  <div class="field">
    <label for="f-{{f['key']}}">{{f['help']}}</label>
    % if f['bool']:
    <select name="{{f['key']}}" id="f-{{f['key']}}">
      <option value="true" {{'selected' if f['value'] == 'true' else ''}}>on</option>
      <option value="false" {{'selected' if f['value'] != 'true' else ''}}>off</option>
    </select>
    % elif f['choices']:
    <select name="{{f['key']}}" id="f-{{f['key']}}">
      % for c in f['choices']:
      <option {{'selected' if c == f['value'] else ''}}>{{c}}</option>
      % end
    </select>
    % elif f['key'] == 'dicom.aet':
    <input name="{{f['key']}}" id="f-{{f['key']}}" value="{{f['value']}}" data-aet-derive="aet-derived" autocomplete="off">
    <p class="derived">Station answers to: <span id="aet-derived"></span></p>
    % else:
    <input name="{{f['key']}}" id="f-{{f['key']}}" value="{{f['value']}}" autocomplete="off">
    % end
    <p class="help key">{{f['key']}}</p>
  </div>
  % end
  <div class="field wide">
  % if rank[role] >= rank['admin']:
  <button type="submit" id="save">Save</button> <span class="muted">Applied at once, no restart.</span>
  % else:
  <p class="muted">Only an admin can change settings.</p>
  % end
  </div>
</form>
% if group == 'http':
<h2>HTTPS certificate</h2>
% if cert_error:
<p class="error" role="alert" id="cert-error">{{cert_error}}</p>
% end
<p class="card" id="cert">{{'Uploaded certificate' if cert and cert['source'] == 'uploaded' else 'Device certificate (made by burnstation init)'}}{{': %s; names %s; valid until %s' % (cert['subject'], cert['names'] or '-', cert['expires']) if cert else ': none'}}</p>
% if rank[role] >= rank['admin']:
<form method="post" action="/tls/upload" enctype="multipart/form-data" class="card grid" id="cert-form">
  <input type="hidden" name="csrf" value="{{csrf}}">
  <label>Certificate chain (PEM: server certificate first, then its CAs) <input type="file" name="certificate" accept=".pem,.crt,.cer"></label>
  <label>Private key (PEM, no password) <input type="file" name="key" accept=".pem,.key"></label>
  <button type="submit">Check and install</button>
</form>
% if cert and cert['source'] == 'uploaded':
<form method="post" action="/tls/remove" class="inline-form" data-confirm="Go back to the device certificate?"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit" class="small danger">Use the device certificate again</button></form>
% end
% end
% end
