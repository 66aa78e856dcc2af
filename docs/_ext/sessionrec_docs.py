"""The site's own Sphinx extension: what conf.py cannot say as plain settings.

* ``reset_argv`` callables for sphinx-gallery, named by string in ``conf.py`` so that
  Sphinx can pickle its configuration: the full run (one seed for the two studies), or
  ``--smoke`` for the fast build.
* API pages keep sessionrec's members, not the ones scikit-learn's base classes add to
  every estimator (metadata-routing requests, HTML repr helpers, ``set_output``), which
  scikit-learn documents and whose docstrings cite its own pages.
* ``Recall@20`` is a metric, not an e-mail address: docutils links any ``word@word`` as a
  ``mailto:`` address; those links go back to plain text.
"""

from __future__ import annotations

import re
from pathlib import Path

from docutils import nodes
from sphinx.transforms import SphinxTransform

# scikit-learn members worth a line on every API page.
SKLEARN_MEMBERS_KEPT = {"get_params", "set_params", "fit_transform"}
_METRIC_MAILTO = re.compile(r"mailto:\w+@\w+")


# The full build's arguments where an example's defaults are a study rather than a page:
# one seed instead of three (the paper-sized tables stay a command away).
FULL_ARGV = {"hrnn_movielens.py": ["--seeds", "0"], "prnn_movielens.py": ["--seeds", "1"]}


def full_argv(gallery_conf, script_vars):
    """The full build's run: the example's own defaults, one seed for the studies."""
    return list(FULL_ARGV.get(Path(script_vars["src_file"]).name, []))


def smoke_argv(gallery_conf, script_vars):
    """The fast build's run: ``--smoke`` (less data, one epoch), as the test suite runs."""
    return ["--smoke"]


def skip_sklearn_members(app, what, name, obj, skip, options):
    module = getattr(obj, "__module__", None) or ""
    if module.startswith("sklearn.") and name not in SKLEARN_MEMBERS_KEPT:
        return True
    return None


class MetricsAreNotEmails(SphinxTransform):
    default_priority = 500

    def apply(self, **kwargs):
        for ref in list(self.document.findall(nodes.reference)):
            if _METRIC_MAILTO.fullmatch(ref.get("refuri", "")):
                ref.replace_self(nodes.Text(ref.astext()))


def setup(app):
    app.connect("autodoc-skip-member", skip_sklearn_members)
    app.add_transform(MetricsAreNotEmails)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
