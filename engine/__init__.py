"""What the engine's processes share: the settings, where files live, the layers they run on."""
