"""Views: plans, drift and graphs as people read them (text, Markdown, Mermaid/dot, virsh).

Pure functions from plan data to text; nothing here reads a host or changes one.
"""
