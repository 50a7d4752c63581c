"""The product's CloudFormation template, rendered with troposphere and awacs (``python -m template_gen``)."""

from template_gen.template import build_template, render

__all__ = ["build_template", "render"]
