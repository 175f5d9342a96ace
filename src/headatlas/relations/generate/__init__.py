"""Scripts that (re)write the built-in relation data files.

Each generator module has a ``build()`` returning its data file contents (name -> JSON text)
and a ``main()`` that writes them: ``python -m headatlas.relations.generate.<module>``.
Hand-authored relations are edited directly as JSON in ``relations/data/``.
"""
