<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{{title}}</title>
<link rel="stylesheet" href="/portal/static/portal.css">
</head>
<body>
<header>
% if institution:
<div class="institution">{{institution}}</div>
% end
% if department:
<div class="department">{{department}}</div>
% end
</header>
<main>
{{!base}}
</main>
</body>
</html>
