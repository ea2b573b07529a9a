<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{{csrf}}">
<title>{{title}} – BurnStation {{aet}}</title>
<link rel="stylesheet" href="/static/style.css">
<script src="/static/app.js" defer></script>
</head>
<body>
<header class="top">
  <div class="brand"><strong>BurnStation</strong> <span class="aet">{{aet}}</span></div>
  <div class="org"><span id="institution">{{institution or 'Institution not set'}}</span>
    % if department:
    <span class="sep">·</span> <span id="department">{{department}}</span>
    % end
  </div>
  % if user:
  <form method="post" action="/logout" class="logout">
    <input type="hidden" name="csrf" value="{{csrf}}">
    <span class="who">{{user}} ({{role}})</span> <button type="submit" class="link">Log out</button>
  </form>
  % end
</header>
% if user:
<nav class="main">
  % for href, label, need in [("/jobs", "Jobs", "viewer"), ("/studies", "Studies", "viewer"), ("/query", "Query", "technician"), ("/transfers", "Transfers", "technician"), ("/forwarding", "Forwarding", "technician"), ("/tokens", "Patient links", "technician"), ("/robots", "Robots", "viewer"), ("/nodes", "Known nodes", "viewer"), ("/settings/dicom", "Settings", "viewer"), ("/diagnostics", "Diagnostics", "viewer"), ("/storage", "Storage", "technician"), ("/network", "Network", "admin"), ("/backup", "Backup", "admin"), ("/users", "Users", "admin"), ("/logs/audit", "Logs", "admin")]:
  %   if rank[role] >= rank[need]:
  <a href="{{href}}" class="{{'on' if path.startswith(href.rsplit('/', 1)[0] or href) else ''}}">{{label}}</a>
  %   end
  % end
</nav>
% end
<main>
% if flash:
<p class="flash" role="status">{{flash}}</p>
% end
{{!base}}
</main>
</body>
</html>
