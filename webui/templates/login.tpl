% rebase('base', title='Log in', csrf=csrf_login)
<h1>Log in</h1>
% if error:
<p class="error" role="alert">{{error}}</p>
% end
<form method="post" action="/login?next={{next}}" class="card narrow">
  <input type="hidden" name="csrf" value="{{csrf_login}}">
  <label>User name <input name="username" id="username" value="{{username}}" required autocomplete="username"></label>
  <label>Password <input type="password" name="password" id="password" required autocomplete="current-password"></label>
  <button type="submit">Log in</button>
</form>
