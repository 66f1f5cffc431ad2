"""llava-lite: LLaVA-style vision-language instruction tuning."""
__version__ = "0.1.0"
