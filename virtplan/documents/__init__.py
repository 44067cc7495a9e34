"""Documents: what virtplan hands to libvirt and reads back from it.

Rendering (jinja2 templates to libvirt XML and cloud-init), parsing (libvirt XML to the
comparable specs the planner diffs), host capabilities, the NoCloud seed ISO, and every
XML fragment virtplan writes. No libvirt connection here: documents in, documents out.
"""
