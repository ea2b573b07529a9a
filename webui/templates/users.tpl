% import time
% rebase('base', title='Users')
<h1>Users</h1>
<table class="list" id="users">
<thead><tr><th>Name</th><th>Role</th><th>Created</th><th></th></tr></thead>
<tbody>
% for u in users:
<tr><td>{{u['name']}}</td><td>{{u['role']}}</td><td>{{time.strftime('%Y-%m-%d %H:%M', time.localtime(u['created_at']))}}</td>
<td><form method="post" action="/users/{{u['name']}}/delete" data-confirm="Delete user {{u['name']}}?"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit" class="small danger">Delete</button></form></td></tr>
% end
</tbody>
</table>
<h2>Add a user, set a password or change a role</h2>
% if error:
<p class="error" role="alert">{{error}}</p>
% end
<form method="post" action="/users" class="card grid">
  <input type="hidden" name="csrf" value="{{csrf}}">
  <label>Name <input name="username" required></label>
  <label>Role <select name="role">
  % for r in roles:
    <option>{{r}}</option>
  % end
  </select></label>
  <label>Password <input type="password" name="password" minlength="8" autocomplete="new-password"></label>
  <label>Password again <input type="password" name="password2" minlength="8" autocomplete="new-password"></label>
  <label>Action <select name="action"><option value="add">add a new user</option><option value="passwd">set the password of an existing user</option><option value="role">change the role of an existing user</option></select></label>
  <button type="submit">Save</button>
</form>
<p class="hint">From a shell: <code>burnstation users add NAME --role technician</code> (password on standard input).</p>
