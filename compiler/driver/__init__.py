"""The driver layer: pipeline, configuration, evaluation, report and demo.

It composes the foundation (`compiler.core`), `passes`, `targets` and `models`; nothing
below it imports from here.
"""
