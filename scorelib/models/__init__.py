"""Score networks. Each is a plain nn.Module; `scorelib.build` turns configs into them."""
