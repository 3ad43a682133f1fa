"""The machinery every pipeline shares; it imports no lesson."""
