# The LCM default that PixArt-delta compares against (§3.1, Fig. 2): w ~ U[3, 15] per sample, fed to the student and
# the target through a zero-initialised w-embedding (the teacher checkpoint loads without it).
_base_ = ["./pixartms_xl2_img1024_lcm.py"]
model = dict(guidance_embedding=True)
method = dict(w_range=(3.0, 15.0), guidance_embedding=True)
