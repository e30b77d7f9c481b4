"""A CAD (computer-aided dispatch) system accepting NENA EIDO over HTTPS: the 911 centre's side."""
