from .hapnet import HAPNet
