"""The engine: plain PyTorch, no Lightning (docs/design.md §1).

``update`` is the one window update every method runs; ``truth`` the one true future
gradient; ``kept`` the windows whose graphs are kept for a later backward.
"""
