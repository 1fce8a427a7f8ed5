"""honed's version (also ``honed.__version__``); kept here so lower layers can name it without importing the
package's top level."""

__version__ = "0.1.0"
