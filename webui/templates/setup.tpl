% rebase('base', title='First start')
<h1>First start: create the administrator</h1>
<p>There is no user yet. Enter the one-time setup code that <code>burnstation init</code> printed
(also on the front panel and in <code>&lt;data&gt;/setup-code</code>, readable by root only).
It works once.</p>
% if error:
<p class="error" role="alert">{{error}}</p>
% end
<form method="post" action="/setup" class="card narrow">
  <input type="hidden" name="csrf" value="{{csrf}}">
  <label>Setup code <input name="code" id="code" autocomplete="off" required placeholder="XXXX-XXXX-XXXX"></label>
  <label>Administrator name <input name="username" id="username" value="{{username}}" required autocomplete="username"></label>
  <label>Password (8 characters or more) <input type="password" name="password" id="password" required minlength="8" autocomplete="new-password"></label>
  <label>Password again <input type="password" name="password2" id="password2" required minlength="8" autocomplete="new-password"></label>
  <button type="submit">Create administrator</button>
</form>
