"""The routing service: one OpenAI-compatible endpoint in front of the backends.

The app is `slm_server.router.app.RouterApp`; it is not imported here, so that modules the
app uses (admin/) may import the router's modules without loading the app first.
"""
