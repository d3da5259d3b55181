"""The Matrix Authentication Service: logins, registration and sessions for Synapse over OAuth 2.0
and OpenID Connect (Element X's sign-in and QR login), with its own site on `auth.` of the domain."""
