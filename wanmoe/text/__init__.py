"""wanmoe.text"""
