"""Networks: the ResNet quality encoder and teacher, heads, encoders for probing."""
