"""The patient portal: study tokens, streamed study zips (the web routes live in webui/portal.py)."""
