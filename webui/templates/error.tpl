% rebase('base', title='Error %d' % code)
<h1>{{code}}</h1>
<p class="error">{{message}}</p>
<p><a href="/">Back to the start page</a></p>
