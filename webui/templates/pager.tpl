<nav class="pager" aria-label="pages">
  <span>{{total}} in all · page {{page}} of {{pages}}</span>
  % if page > 1:
  <a href="?{{query(page - 1)}}" rel="prev">‹ Newer</a>
  % end
  % if page < pages:
  <a href="?{{query(page + 1)}}" rel="next">Older ›</a>
  % end
</nav>
