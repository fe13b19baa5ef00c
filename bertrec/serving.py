"""Where the pyfunc class lived before bertrec.serve: versions registered then pickle this path."""

from bertrec.serve.pyfunc import BundleModel  # noqa: F401
