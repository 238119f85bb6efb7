"""Gap reports, optimality certificates and figures."""
