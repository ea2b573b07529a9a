% rebase('portal_base.tpl', title=title, institution=institution, department=department)
<h1>{{title}}</h1>
<p class="message">{{message}}</p>
