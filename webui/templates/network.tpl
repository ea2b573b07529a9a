% rebase('base', title='Network and time')
<h1>Network and time</h1>
% if pending is not None:
<form method="post" action="/network/confirm" class="card inline" id="pending">
  <input type="hidden" name="csrf" value="{{csrf}}">
  <span>An address change waits for confirmation: the previous settings come back in <span class="countdown" data-deadline="{{deadline}}">{{pending}} s</span>.</span>
  % if confirm_at:
  <span>Confirm from the new address: <a href="{{confirm_at}}" id="confirm-at">{{confirm_at}}</a> (log in there).</span>
  % end
  <button type="submit" id="confirm">Confirm</button>
</form>
% end
<p class="hint">{{'Applied to the system by the root unit burnstation-network-apply (' + apply_status + ').' if applied else 'Outside the appliance image: written to ' + files + ', not applied.'}} A change of interface, mode, address, gateway or DNS must be confirmed within two minutes, else it is undone.</p>
% if error:
<p class="error" role="alert" id="network-error">{{error}}</p>
% end
<form method="post" action="/network" class="card" id="network-form">
  <input type="hidden" name="csrf" value="{{csrf}}">
  % names = {'hostname': 'Host name', 'interface': 'Network interface (name or pattern)', 'mode': 'Address from', 'address': 'Static address with prefix', 'gateway': 'Gateway', 'dns': 'DNS servers', 'search': 'DNS search domains', 'ntp': 'Time servers (NTP)', 'timezone': 'Time zone (e.g. Europe/Oslo)'}
  % for k in keys:
  <label>{{names.get(k, k)}} <code class="muted">{{k}}</code>
  % if k == 'mode':
    <select name="mode"><option value="dhcp" {{'selected' if shown[k] == 'dhcp' else ''}}>DHCP (dhcp)</option><option value="static" {{'selected' if shown[k] == 'static' else ''}}>Static address below (static)</option></select>
  % else:
    <input name="{{k}}" value="{{shown[k]}}">
  % end
  </label>
  % end
  <span class="muted">DNS and NTP: separated by spaces or commas. Address with its prefix, e.g. 192.168.1.20/24.</span>
  <button type="submit" id="save-network">Save</button>
</form>
