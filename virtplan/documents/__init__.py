"""Documents: what virtplan hands to libvirt and reads back from it.

Rendering (jinja2 templates to libvirt XML and cloud-init), the comparable specs the
planner diffs (`specs`: one typed dict per kind, made from libvirt XML by `parse` and from
the model by `fastspec`), host capabilities, the NoCloud seed ISO, and every XML fragment
virtplan writes. No libvirt connection here: documents in, documents out.
"""
