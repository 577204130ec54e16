"""The conformance suite: pytest modules run by ``pumprig conform`` (or by pytest with the plugin).

Every test names the requirements it shows (``@pytest.mark.requirement``), the features it needs
(``@pytest.mark.requires``) and uses the ``pump`` fixture: a ``DeviceUnderTest`` in its known
state. It talks to the target through the programmer and protocol_spec only.
"""
