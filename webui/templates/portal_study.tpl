% rebase('portal_base.tpl', title='Your images', institution=institution, department=department)
<section class="study">
<h1>{{patient_name or 'Patient'}}</h1>
<p class="facts"><span>Study date: {{study_date or 'unknown'}}</span>
% if study_description:
<span>{{study_description}}</span>
% end
</p>
<p class="valid">This link works until {{valid_until}}.</p>
</section>
<section class="downloads">
<h2>Download</h2>
<ul>
% for d in downloads:
<li><a class="button{{' default' if d['default'] else ''}}" href="{{d['href']}}" download>{{d['label']}}</a></li>
% end
</ul>
<p class="hint">The DICOM downloads open in any DICOM viewer (a DICOMDIR is included); the JPEG pictures open anywhere, but are not for diagnosis.</p>
</section>
<section class="series">
<h2>Series</h2>
% for s in series:
<article>
<h3>Series {{s['number']}} · {{s['modality']}}{{(' · ' + s['description']) if s['description'] else ''}}</h3>
<p class="count">{{s['images']}} image{{'' if s['images'] == 1 else 's'}}{{(', %d frames' % s['frames']) if s['frames'] != s['images'] else ''}}</p>
<div class="previews">
% for src in s['previews']:
<img src="{{src}}" alt="preview of series {{s['number']}}" loading="lazy">
% end
</div>
</article>
% end
</section>
