"""Record sharing: the FERPA gate's rules (``safehub.standards.ferpa``)."""
