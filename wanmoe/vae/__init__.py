"""wanmoe.vae"""
