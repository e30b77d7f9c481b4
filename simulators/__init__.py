"""Protocol-faithful stand-ins for third parties that cannot run here (a CAD, an SMS provider).

They speak the real wire format and check what SafeHub sends against the standard
(``safehub.standards``) or their own reading of the vendor's documentation, never with the
client code they stand opposite, so a mistake on our side is caught rather than mirrored.
The dev stack runs them on a laptop; tests run them over real sockets.
"""
