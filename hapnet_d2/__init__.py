"""HAPNet on Detectron2."""
